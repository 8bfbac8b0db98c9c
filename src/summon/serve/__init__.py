"""Serving: the logits protocol (client and server) that lets a remote teacher be a cascade stage."""
