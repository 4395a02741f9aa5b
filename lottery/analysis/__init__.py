"""Reading records back: overlap against chance, multi-seed statistics, reports, figures."""
