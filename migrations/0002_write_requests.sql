CREATE TABLE "write_requests" (
	"user_id" text NOT NULL,
	"request_id" uuid NOT NULL,
	"fingerprint" text NOT NULL,
	"channel_id" uuid NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "write_requests_pkey" PRIMARY KEY("user_id","request_id")
);
