"""Process-wide CLI switches set by the root callback."""

DEBUG = False
