"""LangGraph workflows. Every module here that defines ``graph`` is offered in chat under its name.

See ``bot.registry`` for the optional module attributes and ``bot.kit`` for the helpers.
"""
