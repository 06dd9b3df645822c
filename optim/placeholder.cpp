// temporary: removed once the folder has sources
