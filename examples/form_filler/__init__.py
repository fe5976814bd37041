"""The form-filling case study (see README.md beside this file)."""
