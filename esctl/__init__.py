"""esctl: operations toolkit for Redis-backed Learning.EventStore event stores."""

__version__ = "0.1.0"
