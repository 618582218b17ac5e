"""The article's WebSocket consumer: DCRF's generic actions on posts, plus subscriptions to
hashtags through a model observer (one channel-layer group per hashtag)."""

import re

from django.db.models import QuerySet
from djangochannelsrestframework import mixins
from djangochannelsrestframework.decorators import action
from djangochannelsrestframework.generics import GenericAsyncAPIConsumer
from djangochannelsrestframework.observer import model_observer
from djangochannelsrestframework.observer.model_observer import Action

from . import models, serializers
from .permissions import IsAuthenticatedForWrite


class LivePostConsumer(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,  # not in the article; livepost's protocol has `update`
    mixins.PatchModelMixin,
    mixins.DeleteModelMixin,
    GenericAsyncAPIConsumer,
):
    queryset = models.Post.objects.all()
    serializer_class = serializers.PostSerializer
    permission_classes = (IsAuthenticatedForWrite,)

    def filter_queryset(self, queryset: QuerySet, **kwargs):
        queryset = super().filter_queryset(queryset=queryset, **kwargs)
        if kwargs.get("action") == "list":
            # The newest 500 posts, optionally only those whose body contains a string.
            body_contains = kwargs.get("body_contains", None)
            if body_contains:
                queryset = queryset.filter(body__icontains=body_contains)
            return queryset.order_by("-created_at")[:500]
        if kwargs.get("action") == "retrieve":
            return queryset
        # update, patch and delete: only the author's own posts are found.
        return queryset.filter(author=self.scope.get("user"))

    @model_observer(models.Post)
    async def post_change_handler(self, message, observer=None, action=None, **kwargs):
        # Runs in each subscribed consumer; message is what the serializer below returned.
        await self.send_json({"action": action, **message})

    @post_change_handler.groups_for_signal
    def post_change_handler(self, instance: models.Post, **kwargs):
        # On every save and delete of a post: the groups of the hashtags in its body.
        for hashtag in re.findall(r"#[a-z0-9]+", instance.body.lower()):
            yield f"-hashtag-{hashtag}"

    @post_change_handler.groups_for_consumer
    def post_change_handler(self, hashtag=None, list=False, **kwargs):
        # On subscribe and unsubscribe: the group of the one hashtag asked for.
        if hashtag is not None:
            yield f"-hashtag-#{hashtag}"

    @post_change_handler.serializer
    def post_change_handler(self, instance: models.Post, action, **kwargs):
        # Serialized once per change, in the process that saved the post. DCRF 1.3.0 passes
        # an Action enum (the article compares with the string "delete"): accept both.
        if action == Action.DELETE or action == "delete":
            return {"pk": instance.pk}
        return {"pk": instance.pk, "data": {"body": instance.body}}

    @action()
    async def subscribe_to_hashtag(self, hashtag, **kwargs):
        await self.post_change_handler.subscribe(hashtag=hashtag)
        return {}, 201

    @action()
    async def unsubscribe_from_hashtag(self, hashtag, **kwargs):
        await self.post_change_handler.unsubscribe(hashtag=hashtag)
        return {}, 204
