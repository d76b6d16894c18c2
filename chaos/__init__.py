"""Chaos scenarios for the pipeline: kill and restart its parts mid-run, then check nothing
was lost, duplicated or left stuck (chaos.run)."""
