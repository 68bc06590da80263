"""Built-in training tasks and the Task API."""
