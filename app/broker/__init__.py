"""The broker below api and workers: queue names, the chunk message format, publishing."""
