"""Reports: each result of the pipeline becomes a Document (the build functions here), drawn as report.log
(text.py) and report.html (html.py); CSVs and plots are written from the same results."""
