"""The masking protocol (Bonawitz et al., CCS 2017): round config, messages, the silo and server roles."""
