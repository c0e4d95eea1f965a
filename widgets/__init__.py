"""Streamlit pieces of the pages: pages never import each other, so what two of them show lives here.

`common` holds what several pages share (hardware cards, the run cycle of a job page);
each other module holds one page's form, live view and result views. Logic and data
shaping live in the packages (`planner`, `checks`, `reports`); these modules only draw.
"""
