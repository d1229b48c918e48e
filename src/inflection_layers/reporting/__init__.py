"""The report stage's library: statistics, verdict rules, the paper's numbers, claims, tables, figures and prose."""
