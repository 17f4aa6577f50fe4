# syntax=docker/dockerfile:1
# Build: compile TypeScript with dev dependencies.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# .npmrc sets ignore-scripts: fastify-socket.io's "preinstall: npx only-allow pnpm" would fail.
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY drizzle ./drizzle
COPY src ./src
RUN npm run build

# Production dependencies only.
FROM node:22-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
RUN npm ci --omit=dev --no-audit --no-fund

# Runtime: small, non-root.
FROM node:22-bookworm-slim
ENV NODE_ENV=production FASTIFY_ADDRESS=0.0.0.0 PORT=8080
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY migrations ./migrations
# The demo page; served only when DEMO_ENABLED=true.
COPY public ./public
USER node
EXPOSE 8080 9091
# The gateway, as `npm start` with one V8 flag; fly.toml's [processes] runs the worker from the same image.
# --heap-growing-percent=20: V8 collects once the heap is 20 % above what it kept, instead of
# letting it double: 13 KB of RSS per idle socket instead of 17 (docs/DEPLOY.md, "Gateways
# that hold many idle sockets"). NODE_OPTIONS refuses the flag, so node gets it itself.
# FASTIFY_CLOSE_GRACE_DELAY must exceed DRAIN_WINDOW_MS (both set in fly.toml; defaults 15 s here).
ENV FASTIFY_CLOSE_GRACE_DELAY=15000
CMD ["node", "--heap-growing-percent=20", "node_modules/fastify-cli/cli.js", "start", "-l", "info", "-o", "dist/src/app.js"]
