"""Reverse delivery: SOURCE ids, the SOURCE and GET clients, and the sweep that pulls announced bodies."""
