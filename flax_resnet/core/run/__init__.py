"""A training run, framework-neutral: the skeleton both trainers share, and the run folder."""
