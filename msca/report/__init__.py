"""What a person reads about finished runs: `tables` (results side by side; `python -m msca.report RUN...`) and
`plots` (curves and confusion matrices)."""

from msca.report.tables import comparison_table, load_results

__all__ = ["comparison_table", "load_results"]
