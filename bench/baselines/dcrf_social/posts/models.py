from django.conf import settings
from django.db import models


class Post(models.Model):
    """The article's post: who wrote it, when, and the text (hashtags live in the text).
    The article allows 256 characters; 1000 here, as livepost accepts."""

    created_at = models.DateTimeField(auto_now_add=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, blank=False)
    body = models.CharField(max_length=1000, blank=False)
