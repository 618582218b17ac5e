from rest_framework.serializers import ModelSerializer

from .models import Post


class PostSerializer(ModelSerializer):
    class Meta:
        model = Post
        fields = ["created_at", "author", "body", "pk"]
        read_only_fields = ["author", "created_at", "pk"]

    def create(self, validated_data):
        # The author is whoever the WebSocket's session belongs to, never the client's say.
        validated_data["author"] = self.context.get("scope").get("user")
        return super().create(validated_data)
