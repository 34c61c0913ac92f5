"""A module of the user's own that fails as it is imported: bad input naming the field, not a crash."""

SCALE = 1 / 0
