"""The worklist the modalities see: matching, the day list, the steps they report back (MPPS)."""
