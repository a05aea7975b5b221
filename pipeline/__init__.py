"""Config model, command runner and the pipelines behind xenlab's tasks."""
