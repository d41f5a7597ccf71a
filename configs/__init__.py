"""The shipped configs (YAML), a package so that a wheel install carries them beside train/ and pipeline/."""
