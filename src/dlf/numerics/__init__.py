"""The numerics: models, losses, Γ schedules, data sets and the objective they make.

Plain torch and numpy; nothing here knows about plugins, configs or the trainer.
"""
