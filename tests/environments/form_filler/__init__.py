"""Tests of the form-filling environment, user simulator, scoring and agents."""
