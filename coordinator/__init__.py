"""The gRPC coordinator service, the silo SDK and the ``secagg`` command line."""
