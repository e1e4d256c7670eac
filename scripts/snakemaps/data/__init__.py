"""Input data: the synthetic demo cohort and image loading."""
