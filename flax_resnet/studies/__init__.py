"""The studies: the seeds' experiments (`experiments`) and the speed of both frameworks (`benchmark`)."""
