"""usfast: fast SALT/US-JEPA training, embedding, export and evaluation for ultrasound."""

__version__ = "0.1.0"
