"""Where artefacts live: storage under one root URL, tensor serialization, content fingerprints.
Imports only pretrace.errors and pretrace.config."""
