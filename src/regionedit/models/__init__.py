"""Models behind one family interface (:class:`~regionedit.models.interface.Model`).

``interface`` defines what an editor may ask of a model; ``sd`` is the Stable Diffusion 1.x/2.x
family; ``loading`` finds a model's family from its files, reads its recommended settings and
loads it; ``controlnet`` loads ControlNets.
"""
