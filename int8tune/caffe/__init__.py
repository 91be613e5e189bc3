"""Reading Caffe models: the schema bindings, the loader, the clean net it produces."""
