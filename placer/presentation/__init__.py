"""For people: tables, figures and HTML/Markdown reports."""
