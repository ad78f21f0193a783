"""Knowledge distillation: losses and teacher-output caching."""
