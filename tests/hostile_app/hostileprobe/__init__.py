"""A hostile ServerApp: what can a submitted app reach on the machine that runs it?"""
