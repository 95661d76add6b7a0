"""Host-side data code: image augmentation policies in PIL and numpy."""
