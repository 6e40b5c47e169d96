"""Trainyard's shared service library: settings, broker and streams, job store, logging, tracing."""
