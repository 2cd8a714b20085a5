"""The glom-viz app as a package of small views over ``glom_viz``, which computes everything.

``app.py`` composes the page from these modules:

- ``settings``: what the sidebar's panels return (frozen dataclasses) and the choices they offer;
- ``limits``: what one run may hold and how much the caches keep;
- ``state``: every session-state key, typed accessors, the play state machine, bounded sets;
- ``cache``: every ``st.cache_*`` of the app, keyed by content hashes;
- ``sidebar``: the panels; ``page``: the page's setup, header and frames;
- ``models``, ``pictures``, ``running``: the model, the pictures and GLOM's runs, each cached;
- ``viewer``: the fragment that draws the controls, the chosen view and the export row;
- ``context``: what the viewer hands every view; ``derived``: islands, measures and overlays of a run;
- ``views``: one module per view (islands, sheet, projection, measures, parse tree, column);
- ``export_row``: the download buttons; ``serve``: ``streamlit run app.py`` on a free port, for tests
  and benchmarks.

Nothing here computes what ``glom_viz`` could: a view wires widgets to the package and draws what it returns.
"""
