"""Report: pandas tables -> Jinja templates -> reports/index.html."""
