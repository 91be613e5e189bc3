"""Caffe schema and generated bindings; regenerate with proto/regenerate.sh."""
