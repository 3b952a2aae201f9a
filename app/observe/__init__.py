"""What every process tells an operator beyond metrics: structured logs and traces.

Imports nothing of app but app.config, so the job layer, the api and the workers can
all use it.
"""
