"""The sans-IO core: pure state on the Trio clock, shared by the hub and the client.

Configuration, the wire protocol and its events, circuit breakers, de-duplication, stream
history, rate limiting, metrics and backoff. Nothing here opens a socket (the one file it
reads is a configuration file, when ``HubConfig.from_file`` is asked to), and time is read only
through ``trio.current_time()``, so ``trio.testing.MockClock`` drives all of it. It may import
no other wshub layer (``tests/test_layers.py`` enforces this).
"""
