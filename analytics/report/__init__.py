"""The monthly cold-chain report (CM17, CM3): a county's, a city's or the province's month.

``maths`` holds every definition as pure functions over polars frames (testable by hand);
``facts`` gathers those frames with SQL; ``build`` assembles a report, keeps the reports of closed
months (``monthly_reports``, migration 0008) and generates missing ones for the scheduler;
``xlsx`` writes a report as a workbook, one sheet per table.
"""
