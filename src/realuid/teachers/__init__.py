"""Teachers trained by other code: one adapter (:mod:`.adapter`) and an importer per source format."""
