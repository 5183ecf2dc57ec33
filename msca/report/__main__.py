"""`python -m msca.report RUN_URI...`: finished runs' test results side by side."""

from msca.report.tables import main

main()
