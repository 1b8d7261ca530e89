"""For people: tables, figures and HTML/Markdown reports."""

#: report page formats: one self-contained HTML file, or Markdown beside the PNGs
REPORT_FORMATS = ("html", "md")
