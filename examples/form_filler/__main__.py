"""The form-filling case study: `python -m examples.form_filler --help`."""

from examples.form_filler.case_study import main

main()
