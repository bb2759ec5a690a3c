"""Similarity checking: which earlier submissions a new one shares text with.

- ``winnowing``: fingerprints and containment scores (pure);
- ``text``: text out of plain text, PDF and DOCX files;
- ``index``: the inverted fingerprint index in the database;
- ``provider``: the interface the similarity step calls;
- ``builtin``: winnowing against the assignment's index;
- ``external``: a Turnitin-style remote service (submit, then webhook or polling).

Submodules are imported where used: the api imports ``external`` for the
webhook and must not pull in PDF libraries.
"""
