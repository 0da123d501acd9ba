"""Models behind one family interface (:class:`~regionedit.models.interface.Model`).

``interface`` defines what an editor may ask of a model and what a family declares; ``sd``,
``sdxl`` and ``flow`` are the families, ``families`` their registry (how each is recognised);
``schedule`` the stateless schedules; ``loading`` finds a model's family from its files, reads its
recommended settings and loads it; ``controlnet`` loads ControlNets.
"""
