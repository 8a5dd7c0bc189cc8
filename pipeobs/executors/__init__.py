"""Where workers live. ``local`` (processes on this machine) is the default."""
