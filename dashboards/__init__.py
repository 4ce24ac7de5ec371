"""Server-rendered pages: live board, device pages, reports (issue #7)."""
