"""The Gradio app, one module per tab (``create_<tab>_tab``), each holding its layout, its callbacks and
its api_names; ``app.py`` composes them and wires the few events between tabs. Needs ``gradio``
(``pip install "medsynth[app]"``)."""
